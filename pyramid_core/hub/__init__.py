"""Getting the weights: which published files each variant needs (``catalog``), fetching them
from the Hugging Face Hub (``download``), and packing official folders into single files
(``pack``); ``python -m pyramid_core download`` / ``pack-folder`` (``cli``)."""
