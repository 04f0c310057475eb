"""Clinical knowledge as data: the JSON files beside this module, loaded and indexed once."""

from cds_service.knowledge.loader import (
    DrugConcept,
    DrugRole,
    Knowledge,
    KnowledgeError,
    load_knowledge,
    normalize_text,
)
from cds_service.knowledge.records import Source

__all__ = ["DrugConcept", "DrugRole", "Knowledge", "KnowledgeError", "Source", "load_knowledge", "normalize_text"]
