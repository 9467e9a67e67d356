"""Put this folder on PYTHONPATH and Python starts as on a machine without TensorFlow installed:
the path finder does not see it (`importlib.util.find_spec("tensorflow")` is None, `import
tensorflow` raises ModuleNotFoundError). The GPU machine of benchmarks/gpu.sh has no TensorFlow;
tests/test_gpu_script.py rehearses that, and saves each process TensorFlow's start-up."""

import importlib.machinery

_find_spec = importlib.machinery.PathFinder.find_spec


def _find_spec_without_tensorflow(cls, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
        return None
    return _find_spec(name, path, target)


importlib.machinery.PathFinder.find_spec = classmethod(_find_spec_without_tensorflow)
