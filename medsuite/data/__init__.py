"""Mid-tier data: DataBlock, 2.5D blocks, world-mm sampling, splitters, transforms, tables and adapters."""
