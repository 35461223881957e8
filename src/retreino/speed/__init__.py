"""Training speed: frozen-prefix acceleration (`accelerate`), distribution strategies and precision."""
