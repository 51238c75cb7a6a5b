"""Which deploy steps run on this site, and why: ``optional:`` steps the site enables (``site.enable``) and
``when:`` expressions over ``site.*`` (``spec/when.py``).

What the site values decide is decided when the plan is built (the step is then *off*: ``agent plan`` shows it
skipped with the reason, prune does not keep what it would own, so turning a part off removes what an earlier
apply installed of it); what needs the cluster (``gpu``) is decided when the step runs. Every decision is kept in
``step.choices``, which the agent journals with the step's result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..spec.deploy import DeploySpec, DeployStep
from ..spec.when import UNKNOWN
from .sitevalues import flat
from .step import ApplyStep, shown_bindings, when_text
from .steps import ChartStep

if TYPE_CHECKING:
    from .site import SiteConfig


def decide(st: DeployStep, site: SiteConfig) -> tuple[str | None, dict[str, Any]]:
    """(why the step is off here or None, the choices to journal) from the site alone."""
    off: str | None = None
    choices: dict[str, Any] = {}
    if st.optional:
        by = st.enabled_by(site.enable)
        choices["optional"] = {"enabled": by is not None, **({"by": by} if by else {}),
                               **({"feature": st.feature} if st.feature else {})}
        if by is None:
            names = " or ".join(repr(n) for n in (st.feature, st.step_name) if n)
            off = f"optional, not enabled on this site (site.enable does not name {names})"
    cond = st.condition
    if not cond.literal:
        facts = site.facts()
        value = cond.evaluate(facts)
        choices["when"] = {"expression": cond.text, "site": cond.bindings(facts),
                           "value": "decided when the step runs (needs gpu)" if value is UNKNOWN else value}
        if value is False and off is None:
            off = f"when: {cond.text} is false on this site ({shown_bindings(cond.bindings(facts))})"
    return off, choices


def unmatched_site_names(deploy: DeploySpec, site: SiteConfig) -> list[str]:
    """Plan notes for ``site.enable`` names and ``site.values`` keys that match nothing in this bundle (a typo, or
    meant for another bundle the agent carries)."""
    notes = []
    optional = {n for st in deploy.steps if st.optional for n in (st.step_name, st.feature) if n}
    for n in site.enable:
        if n not in optional:
            notes.append(f"site.enable: {n!r} names no optional step of this bundle "
                         f"({', '.join(sorted(optional)) or 'it has none'})")
    charts = [(st.step_name, st.chart.release or st.chart.name) for st in deploy.steps if st.chart is not None]
    known = {n for pair in charts for n in pair}
    for k in site.values:
        if k not in known:
            notes.append(f"site.values: {k!r} names no chart step or release of this bundle")
    return notes


def values_json(step: ApplyStep) -> dict[str, Any]:
    """For ``agent plan --json``: a chart step's effective values (bundle ⊕ site files, substituted)."""
    return {"values": step.release.values} if isinstance(step, ChartStep) else {}


def values_lines(step: ApplyStep) -> list[str]:
    """For the plan's text: the site values files a chart step uses and its effective values, one leaf a line."""
    if not isinstance(step, ChartStep) or step.off:
        return []
    out = [f"      {'site values':<11} {f['path']} ({f['sha256']})" for f in step.choices.get("valuesFiles", [])]
    out += [f"      {'values':<11} {line}" for line in flat(step.release.values)] if step.release.values else []
    return out


def condition_text(step: ApplyStep) -> str:
    """The plan's ``[…]`` after a step that is not off: its condition, or that the site already satisfies it."""
    when = when_text(step.when)
    if when is None:
        return ""
    if step.choices.get("when", {}).get("value") is True:
        return f"  [when: {when}: true on this site]"
    return f"  [only if {when}]"
