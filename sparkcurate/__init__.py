"""sparkcurate: classify huge text datasets on Apache Spark with GPUs, then filter and write what is kept."""

__version__ = "0.1.0"
