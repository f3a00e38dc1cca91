"""Scripts that build the package's classifier weights or check a machine; not experiments."""
