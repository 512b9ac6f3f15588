"""Server-side pull: registry -> content store -> image record -> snapshots, in the suite."""
