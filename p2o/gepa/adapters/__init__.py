"""The core's seams over OpenAI-compatible endpoints: the policy evaluator and the reflection client."""
