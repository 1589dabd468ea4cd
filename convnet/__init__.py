"""The first convnet of "Deep Learning with JavaScript" (section 4.2), in JAX/Flax.

Research scripts import the pieces they need:

  from convnet import input_pipeline, models, train
  metrics = train.train_and_evaluate(config, workdir)
"""

__version__ = "0.1.0"
