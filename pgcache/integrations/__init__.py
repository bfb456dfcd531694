"""Adapters that put pgcache under other frameworks' own caching hooks (``pgcache.integrations.langchain``)."""
