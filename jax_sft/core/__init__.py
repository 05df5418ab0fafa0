"""What every way of training builds on: parameter-tree helpers, the loss, the forward
pass, the training-mode protocol, the dense mode, the optimizer and the jitted steps."""
