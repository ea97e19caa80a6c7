"""What the model must know about each domain: reward scale (rewards and returns are divided by it before
embedding; spec 4.4), valid discrete actions, and whether windows span episodes (in-context learning)."""

from __future__ import annotations

DOMAIN_DEFAULTS: dict[str, dict] = {
    "metaworld": {"reward_scale": 200.0},
    "dmcontrol": {"reward_scale": 100.0},
    "procgen": {"reward_scale": 1.0, "num_actions": 15},
    "atari": {"reward_scale": 20.0, "num_actions": 18},
    "composuite": {"reward_scale": 1.0},
    "mimicgen": {"reward_scale": 1.0},
    "darkroom": {"reward_scale": 1.0, "num_actions": 5, "in_context": True},
}


def domain_setting(name: str, key: str, value=None, fallback=None):
    """An explicit ``value`` wins; otherwise the registry's default for the domain, else ``fallback``."""
    if value is not None:
        return value
    return DOMAIN_DEFAULTS.get(name, {}).get(key, fallback)
