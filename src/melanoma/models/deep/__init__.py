"""What the Keras model families (cnn, transfer) share: the training loop, custom layers, tf.data input.

One folder, so that dvc.yaml lists it as one dep of each deep model's stages.
"""
