"""conveyor beside the queues a user would pick instead, on one local Redis (see compare.py)."""
