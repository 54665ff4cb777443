"""An algorithm that lives outside trainyard and plugs into it through an entry point."""
