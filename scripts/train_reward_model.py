"""Train a Bradley–Terry reward model. See `python -m reward_models.train_rm --help`.

python scripts/train_reward_model.py recipes/reward_model/rm_arithmetic_smollm2.yaml [key.sub=value ...]
"""

import sys

from reward_models.train_rm import main

if __name__ == "__main__":
    sys.exit(main())
