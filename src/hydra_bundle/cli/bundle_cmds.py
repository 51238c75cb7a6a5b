"""keygen, build, lock, verify, inspect.

The bundle modules are imported inside each command: ``verify --help`` imports neither pydantic nor
cryptography, and ``verify`` does not import the split-bundle writer (tests/test_cli_startup.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..disk import human_bytes
from ..errors import UsageError, VerifyError
from .common import emit_json, handle_errors, reporter
from .options import build_options, source_options


@click.command("keygen")
@click.argument("prefix", type=click.Path(path_type=Path))
@handle_errors
def keygen_cmd(prefix: Path) -> None:
    """Create an ECDSA P-256 key pair: PREFIX.key (PEM PKCS#8) and PREFIX.pub.

    The private key is encrypted when HYDRA_BUNDLE_KEY_PASSWORD is set."""
    from ..bundle.sign import keygen

    key, pub = keygen(prefix)
    click.echo(f"wrote {key} and {pub}")


@click.command("build")
@click.argument("spec", type=click.Path(path_type=Path), default="bundle-spec.yaml")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="Bundle file to write.")
@click.option("--key", "key_path", type=click.Path(path_type=Path), help="Signing key (PREFIX.key).")
@click.option("--unsigned", is_flag=True, help="Write a bundle without a signature (agents refuse it).")
@click.option("--locked", is_flag=True, help="Build exactly what the lock file pins; refuse drift.")
@click.option("--lock-file", type=click.Path(path_type=Path), default=None)
@click.option("--expires", default=None, help="Expiry: RFC 3339 time or duration (90d); overrides the spec.")
@click.option("--split", "split", default=None, metavar="fat32|exfat|dvd|SIZE",
              help="Write media-sized parts OUT.part-01-of-NN.tar (+ SHA256SUMS) instead of one tar.")
@click.option("--site-inventory", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Delta: leave out blobs this site inventory (`agent inventory -o`) lists.")
@click.option("--no-agent-kit", is_flag=True,
              help="Leave out the agent kit (the agent's wheels for every platform and Python, and install.sh).")
@click.option("--agent-python", "agent_pythons", multiple=True, metavar="3.X",
              help="Build the agent kit for these CPython versions only (repeatable) [default: 3.11, 3.12, 3.13].")
@click.option("--agent-index", default=None, metavar="URL",
              help="Index to get the agent kit's dependency wheels from [default: pip's configured index].")
@click.option("--agent-wheelhouse", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Directory of wheels for the agent kit: with no --agent-index the only source (pip --no-index); "
                   "a hydra-bundle wheel there is used as the agent's own.")
@click.option("--cache-blobs", is_flag=True,
              help="Also keep big blobs in the blob cache (a second write of each byte). By default they are "
                   "downloaded straight into the bundle, and a rebuild copies them from the earlier bundle while it "
                   "is where it was written.")
@click.option("--direct", is_flag=True, hidden=True)  # the default since 0.1 (kept so older scripts still run)
@source_options
@handle_errors
def build_cmd(spec: Path, out: Path, key_path: Path | None, unsigned: bool, locked: bool, lock_file: Path | None,
              expires: str | None, split: str | None, site_inventory: Path | None, no_agent_kit: bool,
              agent_pythons: tuple[str, ...], agent_index: str | None, agent_wheelhouse: Path | None, cache_blobs: bool,
              direct: bool,
              quiet: bool, as_json: bool, **src: object) -> None:
    """Build a signed bundle from SPEC (default bundle-spec.yaml)."""
    from ..builder.build import Builder
    from ..builder.kit import KitOptions
    from ..bundle.parts import parse_split
    from ..spec import load_spec
    from ..spec.buildvars import parse_sets

    if key_path and unsigned:
        raise UsageError("--key and --unsigned exclude each other")
    if not key_path and not unsigned:
        raise UsageError("a signing key is required: --key PREFIX.key (or --unsigned, explicitly)")
    if out.is_dir() or not out.parent.is_dir():  # refuse before downloading anything
        raise UsageError(f"-o {out}: " + ("is a directory" if out.is_dir() else f"{out.parent} is not a directory"))
    s = load_spec(spec, parse_sets(src.pop("sets")))  # type: ignore[arg-type]
    opts = build_options(key_path=key_path, unsigned=unsigned, locked=locked, lock_path=lock_file, expires=expires,
                    split=parse_split(split) if split else None, site_inventory=site_inventory,
                    cache_blobs=cache_blobs,
                    agent_kit=not no_agent_kit,
                    kit=KitOptions(list(agent_pythons) or None, agent_index, agent_wheelhouse),
                    **src)  # type: ignore[arg-type]
    rep = reporter(quiet, as_json)
    try:
        res = Builder(s, opts, rep).build(out)
    finally:
        rep.close()
    if as_json:
        emit_json(res.summary())
    elif not quiet:
        c = res.index.components
        for p in res.parts:
            click.echo(f"wrote {p.path}: {human_bytes(p.size)}")
        if res.parts:
            click.echo(f"wrote {res.parts[0].path.parent / 'SHA256SUMS'}")
        if res.omitted[0]:
            click.echo(f"delta: left out {res.omitted[0]} blobs ({human_bytes(res.omitted[1])}) the site holds")
        what = f"{len(res.parts)} parts" if res.parts else str(out)
        kit = (f", agent kit {c.kits[0].version} ({len(c.kits[0].wheels)} wheels for "
               f"{', '.join(c.kits[0].platforms)} × CPython {', '.join(c.kits[0].pythons)})" if c.kits else "")
        click.echo(f"wrote {what}: {human_bytes(res.size)}, {len(res.index.blobs)} blobs, {len(c.images)} images, "
                   f"{len(c.charts)} charts, {len(c.manifests)} manifests, {len(c.files)} files, "
                   f"{len(c.models)} models{kit} ({human_bytes(res.downloaded)} downloaded, "
                   f"{human_bytes(res.cached)} from cache, {res.seconds:.1f}s)")


@click.command("lock")
@click.argument("spec", type=click.Path(path_type=Path), default="bundle-spec.yaml")
@click.option("--lock-file", type=click.Path(path_type=Path), default=None,
              help="Where to write [default: SPEC's name with .lock.yaml].")
@source_options
@handle_errors
def lock_cmd(spec: Path, lock_file: Path | None, quiet: bool, as_json: bool, **src: object) -> None:
    """Pin every tag to a digest and every file to a sha256 (build --locked then refuses drift)."""
    from ..builder.build import Builder, lock_path_for
    from ..spec import load_spec
    from ..spec.buildvars import parse_sets

    s = load_spec(spec, parse_sets(src.pop("sets")))  # type: ignore[arg-type]
    path = lock_file or lock_path_for(spec)
    rep = reporter(quiet, as_json)
    try:
        data = Builder(s, build_options(**src), rep).lock(path)  # type: ignore[arg-type]
    finally:
        rep.close()
    if as_json:
        emit_json(data)
    elif not quiet:
        click.echo(f"wrote {path}")


@click.command("verify")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--pub", "pubs", multiple=True, type=click.Path(path_type=Path), required=True,
              help="Trusted public key (repeatable).")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def verify_cmd(bundles: tuple[Path, ...], pubs: tuple[Path, ...], quiet: bool, as_json: bool) -> None:
    """Verify bundles or parts in one streaming pass each: signature first, then every member's size and digest.

    A part of a split bundle verifies alone; given several parts, also reports which parts of the set are
    missing."""
    from ..bundle.reader import verify_bundle
    from ..bundle.sign import load_public_key

    keys = [load_public_key(p) for p in pubs]
    rep = reporter(quiet, as_json)
    results: list[dict[str, object]] = []
    sets: dict[str, tuple[int, set[int]]] = {}
    failed = False
    try:
        for bundle in bundles:
            rep.stage("verify", bundle.stat().st_size)
            try:
                ob = verify_bundle(bundle, keys, progress=rep.advance)
            except VerifyError as e:
                failed = True
                results.append({"bundle": str(bundle), "ok": False, "reason": e.reason, "detail": e.detail})
                continue
            r: dict[str, object] = {"bundle": str(bundle), "ok": True, "name": ob.index.name,
                                    "version": ob.index.version, "sequence": ob.index.sequence,
                                    "signer": ob.signer, "blobs": len(ob.index.blobs), "digest": ob.digest}
            if ob.part is not None and ob.index.parts is not None:
                r.update(part=ob.part, of=ob.index.parts.count)
                sets.setdefault(ob.digest, (ob.index.parts.count, set()))[1].add(ob.part)
            results.append(r)
    finally:
        rep.close()
    missing = {d: sorted(set(range(1, n + 1)) - have) for d, (n, have) in sets.items()}
    if as_json:
        emit_json(results[0] if len(results) == 1 and not sets else
                  {"ok": not failed, "results": results,
                   "sets": [{"digest": d, "of": sets[d][0], "missing": m} for d, m in missing.items()]})
    else:
        for r in results:
            if not r["ok"]:
                click.echo(f"FAILED: {r['bundle']}: {r['reason']}: {r['detail']}", err=True)
            elif not quiet:
                what = f"part {r['part']} of {r['of']} verified" if "part" in r else f"{r['blobs']} blobs verified"
                click.echo(f"OK: {r['bundle']}: {r['name']} {r['version']} (sequence {r['sequence']}), {what}, "
                           f"signed by {r['signer']}")
        if not quiet and len(bundles) > 1:
            for d, m in missing.items():
                click.echo(f"set {d[:19]}: " + (f"complete ({sets[d][0]} parts)" if not m else
                           f"missing parts {', '.join(map(str, m))} of {sets[d][0]}"))
    if failed:
        sys.exit(1)


@click.command("inspect")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole index as JSON.")
@handle_errors
def inspect_cmd(bundle: Path, as_json: bool) -> None:
    """Show what a bundle holds (reads only the index; does NOT verify — use `verify`)."""
    from ..bundle.parts import describe
    from ..bundle.reader import open_bundle

    with open_bundle(bundle, None, require_signature=False) as ob:
        idx = ob.index
        signed = ob.signature is not None
        part = ob.part
    if as_json:
        emit_json({**idx.model_dump(mode="json", exclude_none=True), "signed": signed,
                   **({"part": part} if part else {})})
        return
    click.echo(f"{idx.name} {idx.version}  sequence {idx.sequence}  created {idx.created}"
               + (f"  expires {idx.expires}" if idx.expires else "") + ("" if signed else "  UNSIGNED"))
    click.echo(f"builder {idx.builder}  platforms {', '.join(idx.platforms)}  spec {idx.specDigest[:19]}")
    click.echo(f"{len(idx.blobs)} blobs, {human_bytes(idx.total_size)}")
    om = idx.omitted()
    if om:
        click.echo(f"delta: {len(om)} blobs ({human_bytes(sum(b.size for b in om))}) omitted (the site holds them), "
                   f"{human_bytes(idx.carried_size)} carried")
    if idx.parts is not None:
        info = describe(idx)
        click.echo(f"split: {idx.parts.count} parts of at most {human_bytes(idx.parts.maxSize)}"
                   + (f"; this file is part {part}" if part else ""))
        for p in info["parts"]:  # type: ignore[attr-defined]
            click.echo(f"  part {p['part']}: {p['blobs']} blobs, {p['segments']} segments, {human_bytes(p['bytes'])}")
    sizes = {b.digest: b.size for b in idx.blobs}
    for kind in ("images", "charts", "manifests", "files", "models", "kits"):
        items = getattr(idx.components, kind)
        if not items:
            continue
        click.echo(f"{kind}:")
        for c in items:
            extra = f"  [{', '.join(c.platforms)}]" if kind == "images" else ""
            if kind == "kits":
                extra = (f"  agent {c.version}, {len(c.wheels)} wheels, {', '.join(c.platforms)} × CPython "
                         f"{', '.join(c.pythons)}; install: tar -xf {bundle.name} install.sh && sh install.sh "
                         f"--pub KEY.pub {bundle.name}")
            click.echo(f"  {c.ref}  {c.digest[:19]}  {human_bytes(sum(sizes[d] for d in c.blobs))}{extra}")
