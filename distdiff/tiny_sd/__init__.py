"""The small SD-architecture models the project ships and trains (checkpoint/tiny-sd-*)."""
