"""Pure logic of core/: metrics (CHAIR), pair selection, the import layering."""
