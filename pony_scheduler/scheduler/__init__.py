"""The scheduler service: its work loop, schedule maths and job executor."""
