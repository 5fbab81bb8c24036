"""The data layer: corpora and tasks as TFDS datasets (`corpus`, `tasks`, resolved by
name in `sources`), tokenizers, token files prepared once (`prepared`), step-indexed
batches (`pipeline`) and labelled sentences for fine-tuning (`labelled`)."""

from odeplm.core.errors import OdeplmError


class DataError(OdeplmError):
    """A dataset that cannot be built or read: missing files, unknown names, empty splits."""
