# example_worker.py: serves every task type of the example blueprints
import asyncio
import hashlib
import time

from worker_sdk import InvalidInputError, PermanentError, Result, TransientError, Worker

worker = Worker(worker_type="examples")  # settings come from the environment, read by run()

OUT_OF_STOCK = {"sku-0"}


async def gateway_charge(token: str, amount: float) -> str:
    await asyncio.sleep(0.01)  # stands in for a call to a payment gateway
    return "ch_" + hashlib.sha256(f"{token}:{amount}".encode()).hexdigest()[:12]


# -- image_pipeline, batch_thumbnails ----------------------------------------------------
@worker.task(
    "fetch_image",
    input_schema={"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
)
async def fetch_image(params, ctx):
    await ctx.progress(0.5, f"downloading {params['url']}")
    name = hashlib.sha256(params["url"].encode()).hexdigest()[:12]
    return {"path": f"/images/{name}.png"}


@worker.task("resize_image")
async def resize_image(params, ctx):
    source = params.get("path") or params.get("url")
    if not source:
        raise InvalidInputError("resize_image needs a path or a url", {"got": sorted(params)})
    width = params.get("width", 256)
    return {"path": f"{source.rsplit('.', 1)[0]}-{width}w.png", "width": width}


@worker.task("publish_image")
async def publish_image(params, ctx):
    return {"url": f"https://cdn.example.com/{params['name']}"}


@worker.task("make_contact_sheet")
async def make_contact_sheet(params, ctx):
    return {"path": f"/sheets/{ctx.job_id}.png", "count": len(params["thumbnails"])}


# -- order_processing ----------------------------------------------------------------------
@worker.task("check_inventory")
async def check_inventory(params, ctx):
    missing = [item for item in params["items"] if str(item) in OUT_OF_STOCK]
    if missing:
        return Result("out_of_stock", {"missing": missing})  # on: {out_of_stock: no_stock}
    return {"reserved": params["items"]}


@worker.task("ship")
def ship(params, ctx):  # a plain function runs in a thread: blocking calls are fine
    time.sleep(0.01)
    return {"tracking": f"TRK-{ctx.task_id[-8:]}", "speed": params["speed"]}


# -- flaky_payment -------------------------------------------------------------------------
@worker.task("charge_card", input_schema={"type": "object", "required": ["token", "amount"]})
async def charge_card(params, ctx):
    if params["token"] == "tok_declined":
        return Result("declined", {"reason": "insufficient funds"})  # on: {declined: ...}
    if params["token"] == "tok_stolen":
        raise PermanentError("card reported stolen")  # fails at once, never retried
    if params["amount"] <= 0:
        raise InvalidInputError("amount must be positive", {"amount": params["amount"]})
    try:
        charge_id = await gateway_charge(params["token"], params["amount"])
    except ConnectionError as exc:
        raise TransientError(f"gateway unreachable: {exc}") from exc  # retried
    return {"charge_id": charge_id}


@worker.task("send_receipt")
async def send_receipt(params, ctx):
    return {"receipt_for": params["charge_id"]}


# -- onboarding, reminder, document_intake, expense_approval ------------------------------
@worker.task("create_account")
async def create_account(params, ctx):
    return {"account_id": f"acct-{params['user']}"}


@worker.task("send_email")
async def send_email(params, ctx):
    return {"sent_to": params["user"], "with_avatar": bool(params.get("avatar"))}


@worker.task("ocr")
async def ocr(params, ctx):
    for step in range(1, 4):
        await asyncio.sleep(0.01)
        await ctx.progress(step / 3, f"page {step} of 3")
    return {"text": f"text of {params['document']}"}


@worker.task("extract_metadata")
async def extract_metadata(params, ctx):
    return {"pages": 3, "source": params["document"]}


@worker.task("index_document")
async def index_document(params, ctx):
    return {"indexed": True, "words": len(str(params["text"]).split())}


@worker.task("pay_expense")
async def pay_expense(params, ctx):
    return {"paid": params["amount"], "to": params["employee"]}


if __name__ == "__main__":
    worker.run()  # until SIGTERM or SIGINT; exit 0 after a graceful shutdown
