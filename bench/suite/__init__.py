"""The ``staged bench`` library: presets, schedules, the runner, equal tuning, the protocol, figures and reports."""
