"""Where the agent's config is found: named apart from the schema so the CLI can say it without importing it."""

DEFAULT_CONFIG = "/etc/hydra-bundle/agent.yaml"
CONFIG_ENV = "HYDRA_BUNDLE_AGENT_CONFIG"
