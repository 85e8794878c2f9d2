"""lerobot_policy_pi_rl: PI-RL (online RL fine-tuning of flow-matching VLA policies) as a LeRobot plugin.

Importing the package registers everything it offers with LeRobot's config registries: the policy type `pi_rl`,
the algorithm type `pi_rl` (`--algorithm.type=pi_rl`) and the env type `pi_rl_pickcube` (LeRobot's
`register_third_party_plugins()` imports it automatically for installed `lerobot_policy_*` distributions).
"""

from .configuration_pi_rl import PiRLConfig

__version__ = "0.1.0"
__all__ = ["PiRLConfig", "__version__"]

# Registers the `pi_rl_default_task` processor step, so saved VLA pre-processors reload by name.
from .backbones import vla_processors  # noqa: E402,F401
# Registers --algorithm.type=pi_rl (the config only: the algorithm itself loads when a learner builds it).
from .rl import config as _algorithm_config  # noqa: E402,F401
# Registers --env.type=pi_rl_pickcube (cheap: gym_hil and MuJoCo load only when an env is built).
from . import envs  # noqa: E402,F401
