"""First reads: turning report text into per-finding labels."""
