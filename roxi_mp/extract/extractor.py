class Extractor:
    def __init__(self, settings):
        raise NotImplementedError("scratch stub")
