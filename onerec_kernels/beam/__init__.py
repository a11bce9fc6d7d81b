from .op import BeamSearchResult, constrained_beam_search, trie_beam_search_step
from .reference import trie_beam_step_reference
from .trie import SemanticIdTrie

__all__ = ["BeamSearchResult", "SemanticIdTrie", "constrained_beam_search",
           "trie_beam_search_step", "trie_beam_step_reference"]
