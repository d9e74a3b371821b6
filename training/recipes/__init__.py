"""Scripted experiments and the recipe that builds the embedded default model."""
