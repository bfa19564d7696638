"""responder/sinks"""
