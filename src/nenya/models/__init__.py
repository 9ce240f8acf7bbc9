"""Plain ``nn.Module`` definitions (no I/O)."""
