"""The training configs, shipped with the package as ``zoo.configs`` (``zoo-train fit -c demo`` finds them)."""
