"""Train, evaluate and run any zoo/timm model: ``python train.py fit -c configs/demo.yaml`` (see docs/training.md)."""
from zoo.train.cli import main

if __name__ == '__main__':
    main()
