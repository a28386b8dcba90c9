"""The parts of the FineParser network, one file each; `fineparser.model` composes them."""
