"""Backends. Each is one module with one load(bundle, precision, components=None, **options) that
returns {component name: callable from named numpy arrays to named numpy arrays}. Which backends
exist, what each needs and where each runs is recorded in nitro_edge.registry.BACKENDS.
"""
