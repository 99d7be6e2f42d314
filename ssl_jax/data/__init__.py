"""Input: TFDS / scikit-learn sources (sources.py), tf.data augmentations (augment.py, heavy.py)
and the pipelines that feed the step (pipeline.py)."""
