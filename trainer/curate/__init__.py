"""Curation (Skywork-Reward-V2 stage 1): LLM judges, preference attributes, retrieval, the loop.

Deliberately empty of imports: the GUI and CLI import single modules of this package, and
none of them may pull in torch, llama_cpp or usearch before a function needs them.
"""
