from openai import OpenAI


def run_agent(base_url, row, api_key, model="policy"):
    client = OpenAI(base_url=base_url, api_key=api_key)
    messages = [{"role": "user", "content": row["prompt"]}]
    first = client.chat.completions.create(model=model, messages=messages).choices[0].message.content
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "Reply with only the number."}]
    final = client.chat.completions.create(model=model, messages=messages).choices[0].message.content
    return 1.0 if final.strip() == row["answer"] else 0.0
