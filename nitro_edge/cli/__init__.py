"""The nitro-edge command line (typer). Heavy imports live inside each command's body."""
