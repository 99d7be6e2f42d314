"""Evaluation protocols on a pretrained encoder; above the training engine, below the entry points.

  run.py          the protocols (knn, linear_cached, linear / finetune, clustering, layer_probe,
                  monitor) on a `Pretrained` encoder, and `python -m ssl_jax.evaluate`'s run()
  in_training.py  the same protocols on the live train state, as the training loop's hooks
                  (periodic kNN, end-of-training records); pretrain_and_evaluate()
  features.py     feature extraction over the mesh; knn.py, linear.py, clustering.py: the
                  protocols' arithmetic; supervised.py: trained linear / fine-tuned classifiers
"""
