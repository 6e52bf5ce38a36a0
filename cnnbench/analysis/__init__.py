"""Model analysis: per-layer statistics (`cnnbench summary`) and architecture tables (`cnnbench archs`)."""
