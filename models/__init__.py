"""The sample simulation models: circle, rectangle, triangle."""
