"""The NLP engine under the analyzer: Presidio's spaCy engine on a blank pipeline.

Every recognizer Keyturn uses is pattern based, so no trained spaCy model is needed and none
is ever loaded or downloaded: the engine wraps ``spacy.blank("en")``. These two classes
also keep the analyzer from doing work that a blank pipeline makes pointless (tokenizing,
deep-copying results for a context enhancer that cannot change them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import spacy
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
from spacy.tokens import Doc

#: The one language the engine and every recognizer are registered for.
LANGUAGE = "en"


class BlankSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine around ``spacy.blank("en")``: no trained model, no tokens.

    Every recognizer here is pattern based, so no named entities are needed, and texts are
    not even tokenized: tokens only feed Presidio's lemma context enhancer, which cannot
    fire without a lemmatizer (words passed as explicit ``context`` still work without
    tokens), while spaCy's vocabulary keeps every new token it sees, about 1 KB each, a
    leak for a service reading random ids. The blank pipeline still answers vocabulary
    questions (stop words, punctuation). Never calls ``spacy.load`` or the downloader.
    """

    def __init__(self) -> None:
        super().__init__(models=[{"lang_code": LANGUAGE, "model_name": "blank:en"}])

    def load(self) -> None:
        """Create the blank pipeline."""
        # the base class types ``nlp`` as what it has before loading (None); a loaded engine holds this
        self.nlp = {LANGUAGE: spacy.blank(LANGUAGE)}  # type: ignore[assignment]

    def get_supported_entities(self) -> list[str]:
        """A blank pipeline recognises no named entities."""
        return []

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        """Artifacts with no tokens, lemmas or entities (see the class docstring)."""
        return NlpArtifacts(
            entities=[],
            tokens=Doc(self.nlp[language].vocab),  # type: ignore[index]  # loaded: see ``load``
            tokens_indices=[],
            lemmas=[],
            nlp_engine=self,
            language=language,
        )

    # the base's signature (Iterable[str], **kwargs) leaves out the as_tuples form its callers use
    def process_batch(  # type: ignore[override]
        self,
        texts: Iterable[Any],
        language: str,
        batch_size: int = 1,
        n_process: int = 1,
        as_tuples: bool = False,
    ) -> Iterator[Any]:
        """:meth:`process_text` for each text, in the shape Presidio's batch engine expects."""
        for item in texts:
            if as_tuples:
                text, context = item
                yield str(text), self.process_text(str(text), language), context
            else:
                yield str(item), self.process_text(str(item), language)


class BlankPipelineContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, minus its work when it cannot change anything.

    It raises scores when a lemma near a match, or a word passed as ``context``, is one of
    the recognizer's context words. A blank pipeline has no lemmatizer (every lemma is
    empty), so without explicit context no score can change; then the results are
    returned as they are instead of deep-copied, which was half the cost of a short call.
    """

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        """The results unchanged without ``context``; Presidio's enhancement with it."""
        if not context:
            return raw_results
        return super().enhance_using_context(text, raw_results, nlp_artifacts, recognizers, context)
