"""What the studio can train: objectives (what the loss is) and methods (which weights move), in one registry."""
