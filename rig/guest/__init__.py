"""Code that runs inside the guest VM (stdlib only)."""
