"""Where training batches come from: windows of consecutive positions (``windows``),
upstream's activation store read resumably (``lm_batches``), upstream's cached activations
(``cached``), global batches made of data streams (``streams``), and synthetic data for
demos (``synthetic``, ``sequences``)."""
