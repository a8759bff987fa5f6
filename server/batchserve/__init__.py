"""batchserve: a self-hosted model inference server with dynamic batching.

Importing this package has no side effects and does not import torch; heavy
frameworks are imported by the backend that needs them, when it loads.
"""

__version__ = "0.1.0"
