"""The methods' math, one module each, imported by both the generator and the algorithms.

``cdga`` (prompts, env pairs, image guidance), ``edsam`` (transport transformation), ``latent_prior``
(Gaussian priors of inverted latents, geometric rejection, bandwidth), ``gsd`` (Gradient Score Distillation),
``candidates`` (DomainFusion's style/content candidate selection and AdaIN), ``miro`` (MIRO's variance encoders
and penalty), ``style`` (channel statistics and AdaIN). The generation methods' specs are in ``generation``.
"""
