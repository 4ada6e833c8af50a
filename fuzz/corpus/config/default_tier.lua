return { llm = { default_tier = "dolocal" } }
