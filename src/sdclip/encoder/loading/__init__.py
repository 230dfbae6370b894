"""Reading text encoders out of real files: checkpoint readers (never unpickling untrusted data), the
Hugging Face hub and cache, and the key layouts met in the wild."""
