"""DJL workflows: spec parsing and validation, templates, built-in functions and execution."""
