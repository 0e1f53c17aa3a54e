"""`sagehost gateway NAME`: an HTTPS front door for endpoint NAME; `--delete` takes it away.

API Gateway (a REST API) `POST /predict` -> Lambda proxy integration -> a function running
sagehost's `lambda_handler.py` (zipped from the installed package) -> InvokeEndpoint. The
function's role may invoke that one endpoint and write the function's own log group, nothing
else. `--api-key` adds an API key and a usage plan, and the method then requires the key.

Each piece is tagged `sagehost:endpoint=NAME`; the role and the function are named from NAME, so
`gateway NAME --delete` and `sagehost delete NAME` find them all, and touch nothing untagged.
Running the command again changes only what differs (new handler code, a missing piece) and then
redeploys the stage; a key once required stays required until `--delete`.

Importing this module needs click only (boto3 is loaded when the command runs).
https://docs.aws.amazon.com/apigateway/latest/developerguide/set-up-lambda-proxy-integrations.html
https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-usage-plans.html
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import click

from sagehost.aws.errors import AwsConflict, AwsError, AwsNotFound, AwsPermissionDenied

if TYPE_CHECKING:
    from sagehost.aws.session import Aws

log = logging.getLogger("sagehost.aws")

STAGE = "prod"
PATH = "predict"
RUNTIME = "python3.12"
HANDLER_FILE = "lambda_handler.py"
TIMEOUT_S = 30  # API Gateway gives up on the function after 29 s
MEMORY_MB = 256
POLICY_NAME = "sagehost-invoke-endpoint"
PERMISSION_ID = "sagehost-apigateway"
MAX_NAME = 64  # IAM role and Lambda function names
# A new role takes seconds to be usable by Lambda ("cannot be assumed by Lambda"): IAM is
# eventually consistent. https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html
ROLE_READY_TRIES = 10
ROLE_READY_WAIT_S = 3.0
LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def resource_name(name: str) -> str:
    """`sagehost-gateway-NAME` for the role and the function; a long NAME keeps 64 characters with a hash."""
    full = f"sagehost-gateway-{name}"
    if len(full) <= MAX_NAME:
        return full
    return f"{full[: MAX_NAME - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def api_name(name: str) -> str:
    """The REST API's, the API key's and the usage plan's name."""
    return f"sagehost-{name}"


def handler_zip() -> bytes:
    """lambda_handler.py alone in a zip, byte for byte the same each time (so its hash says if it changed)."""
    source = resources.files("sagehost.aws").joinpath(HANDLER_FILE).read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        entry = zipfile.ZipInfo(HANDLER_FILE, date_time=(1980, 1, 1, 0, 0, 0))
        entry.external_attr = 0o644 << 16
        entry.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(entry, source)
    return buffer.getvalue()


def code_sha256(data: bytes) -> str:
    """Lambda's CodeSha256: the base64 of the zip's SHA-256."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def role_policy(endpoint_arn: str, log_group_arn: str) -> dict[str, Any]:
    """InvokeEndpoint on this one endpoint, and the function's own log lines."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "InvokeOneEndpoint",
                "Effect": "Allow",
                "Action": "sagemaker:InvokeEndpoint",
                "Resource": endpoint_arn,
            },
            {
                "Sid": "WriteOwnLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [log_group_arn, f"{log_group_arn}:*"],
            },
        ],
    }


@dataclass(frozen=True)
class Where:
    """The ARNs and names the pieces point at each other with."""

    name: str
    endpoint_arn: str

    @property
    def partition(self) -> str:
        return self.endpoint_arn.split(":")[1]

    @property
    def region(self) -> str:
        return self.endpoint_arn.split(":")[3]

    @property
    def account(self) -> str:
        return self.endpoint_arn.split(":")[4]

    @property
    def function(self) -> str:
        return resource_name(self.name)

    @property
    def function_arn(self) -> str:
        return f"arn:{self.partition}:lambda:{self.region}:{self.account}:function:{self.function}"

    @property
    def log_group_arn(self) -> str:
        return f"arn:{self.partition}:logs:{self.region}:{self.account}:log-group:/aws/lambda/{self.function}"

    @property
    def integration_uri(self) -> str:
        service = f"arn:{self.partition}:apigateway:{self.region}:lambda"
        return f"{service}:path/2015-03-31/functions/{self.function_arn}/invocations"

    def source_arn(self, api_id: str) -> str:
        """What may call the function: this API's POST /predict, on any stage."""
        return f"arn:{self.partition}:execute-api:{self.region}:{self.account}:{api_id}/*/POST/{PATH}"

    def stage_arn(self, api_id: str) -> str:
        return f"arn:{self.partition}:apigateway:{self.region}::/restapis/{api_id}/stages/{STAGE}"

    def url(self, api_id: str) -> str:
        return f"https://{api_id}.execute-api.{self.region}.amazonaws.com/{STAGE}/{PATH}"

    @property
    def tags(self) -> dict[str, str]:
        from sagehost.aws.spec import TAG_KEY

        return {TAG_KEY: self.name}


@dataclass
class Built:
    """What `up` left in place, and what it changed on the way."""

    api_id: str
    key_id: str | None
    changes: list[str] = field(default_factory=list)


# ---- create or update --------------------------------------------------------------------------


def up(aws: Aws, name: str, *, api_key: bool, sleep: Callable[[float], None] = time.sleep) -> Built:
    """Make (or bring up to date) the front door of endpoint `name`."""
    where = Where(name, endpoint_arn(aws, name))
    changes: list[str] = []
    role_arn = ensure_role(aws, where, changes)
    ensure_function(aws, where, role_arn, changes, sleep)
    api_id = ensure_api(aws, where, changes)
    key_required = ensure_route(aws, where, api_id, api_key, changes)
    ensure_permission(aws, where, api_id, changes)
    ensure_stage(aws, where, api_id, changes)
    key_id = ensure_key(aws, where, api_id, changes) if key_required else None
    return Built(api_id, key_id, changes)


def endpoint_arn(aws: Aws, name: str) -> str:
    endpoint = aws.find("sagemaker", "describe_endpoint", EndpointName=name)
    if endpoint is None:
        raise AwsNotFound(
            f"There is no endpoint {name} in {aws.region} to put a gateway in front of. Deploy it first "
            f"(`sagehost deploy {name} …`), or pass the right --region."
        )
    return str(endpoint["EndpointArn"])


def ensure_role(aws: Aws, where: Where, changes: list[str]) -> str:
    role_name = where.function
    role = aws.find("iam", "get_role", RoleName=role_name)
    if role is None:
        role = aws.write(
            "iam",
            "create_role",
            RoleName=role_name,
            AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST),
            Description=f"sagehost gateway: lets its Lambda function invoke SageMaker endpoint {where.name}",
            Tags=_tag_list(where.tags),
        )
        changes.append(f"created IAM role {role_name}")
    else:
        tags = aws.read("iam", "list_role_tags", RoleName=role_name).get("Tags", [])
        _require_owned(where, "IAM role", role_name, {t["Key"]: t["Value"] for t in tags})
    wanted = role_policy(where.endpoint_arn, where.log_group_arn)
    current = aws.find("iam", "get_role_policy", RoleName=role_name, PolicyName=POLICY_NAME)
    if current is None or _as_json(current.get("PolicyDocument")) != wanted:
        aws.write(
            "iam", "put_role_policy", RoleName=role_name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(wanted)
        )
        changes.append(f"role {role_name} may invoke endpoint {where.name} (only)")
    return str(role["Role"]["Arn"])


def ensure_function(aws: Aws, where: Where, role_arn: str, changes: list[str], sleep: Callable[[float], None]) -> None:
    code = handler_zip()
    found = aws.find("lambda", "get_function", FunctionName=where.function)
    if found is not None:
        tags = found.get("Tags")
        if tags is None:
            tags = aws.read("lambda", "list_tags", Resource=where.function_arn).get("Tags", {})
        _require_owned(where, "Lambda function", where.function, tags)
        if found["Configuration"].get("CodeSha256") != code_sha256(code):
            aws.write("lambda", "update_function_code", FunctionName=where.function, ZipFile=code)
            changes.append(f"updated the code of Lambda function {where.function}")
        return
    params = {
        "FunctionName": where.function,
        "Runtime": RUNTIME,
        "Role": role_arn,
        "Handler": f"{HANDLER_FILE.removesuffix('.py')}.handler",
        "Code": {"ZipFile": code},
        "Description": f"sagehost gateway: POST /{PATH} -> SageMaker endpoint {where.name}",
        "Timeout": TIMEOUT_S,
        "MemorySize": MEMORY_MB,
        "Environment": {"Variables": {"SAGEHOST_ENDPOINT": where.name}},
        "Tags": where.tags,
    }
    for attempt in range(ROLE_READY_TRIES):
        try:
            aws.write("lambda", "create_function", **params)
            break
        except AwsError as exc:
            if "cannot be assumed" not in str(exc) or attempt == ROLE_READY_TRIES - 1:
                raise
            sleep(ROLE_READY_WAIT_S)  # the new role is not visible to Lambda yet
    changes.append(f"created Lambda function {where.function}")


def ensure_api(aws: Aws, where: Where, changes: list[str]) -> str:
    mine = _owned(where, _pages(aws, "get_rest_apis"), api_name(where.name))
    if mine:
        return str(mine[0]["id"])
    created = aws.write(
        "apigateway",
        "create_rest_api",
        name=api_name(where.name),
        description=f"sagehost gateway for SageMaker endpoint {where.name}",
        # Every media type is binary to API Gateway: bodies reach the function as base64 and its
        # base64 answers leave as bytes (an .npy, an image), while text answers pass as text.
        binaryMediaTypes=["*/*"],
        endpointConfiguration={"types": ["REGIONAL"]},
        tags=where.tags,
    )
    changes.append(f"created REST API {api_name(where.name)} ({created['id']})")
    return str(created["id"])


def ensure_route(aws: Aws, where: Where, api_id: str, api_key: bool, changes: list[str]) -> bool:
    """POST /predict -> the function; whether it requires an API key (once required, it stays so)."""
    resources_ = _pages(aws, "get_resources", restApiId=api_id)
    resource = next((r for r in resources_ if r.get("path") == f"/{PATH}"), None)
    if resource is None:
        root = next(r for r in resources_ if r.get("path") == "/")
        resource = aws.write("apigateway", "create_resource", restApiId=api_id, parentId=root["id"], pathPart=PATH)
    method = None
    if "POST" in (resource.get("resourceMethods") or {}):
        method = aws.read("apigateway", "get_method", restApiId=api_id, resourceId=resource["id"], httpMethod="POST")
    key_required = api_key or bool(method and method.get("apiKeyRequired"))
    integration = (method or {}).get("methodIntegration") or {}
    if (
        method is not None
        and bool(method.get("apiKeyRequired")) == key_required
        and integration.get("type") == "AWS_PROXY"
        and integration.get("uri") == where.integration_uri
    ):
        return key_required
    ids = {"restApiId": api_id, "resourceId": resource["id"], "httpMethod": "POST"}
    if method is not None:
        aws.write("apigateway", "delete_method", **ids)
    aws.write("apigateway", "put_method", **ids, authorizationType="NONE", apiKeyRequired=key_required)
    aws.write(
        "apigateway",
        "put_integration",
        **ids,
        type="AWS_PROXY",
        integrationHttpMethod="POST",
        uri=where.integration_uri,
    )
    required = " (API key required)" if key_required else ""
    changes.append(f"POST /{PATH} -> Lambda function {where.function}{required}")
    return key_required


def ensure_permission(aws: Aws, where: Where, api_id: str, changes: list[str]) -> None:
    """Lambda's resource policy: API Gateway may call the function for this API's POST /predict only."""
    source = where.source_arn(api_id)
    policy = aws.find("lambda", "get_policy", FunctionName=where.function)
    statements = json.loads(policy["Policy"]).get("Statement", []) if policy else []
    ours = [s for s in statements if s.get("Sid") == PERMISSION_ID]
    if ours and source in json.dumps(ours[0].get("Condition", {})):
        return
    if ours:
        aws.write("lambda", "remove_permission", FunctionName=where.function, StatementId=PERMISSION_ID)
    aws.write(
        "lambda",
        "add_permission",
        FunctionName=where.function,
        StatementId=PERMISSION_ID,
        Action="lambda:InvokeFunction",
        Principal="apigateway.amazonaws.com",
        SourceArn=source,
    )
    changes.append(f"API {api_id} may call Lambda function {where.function}")


def ensure_stage(aws: Aws, where: Where, api_id: str, changes: list[str]) -> None:
    """A deployment on stage `prod` whenever the API changed (or has no stage yet)."""
    stages = aws.read("apigateway", "get_stages", restApiId=api_id).get("item", [])
    new = not any(s.get("stageName") == STAGE for s in stages)
    if not new and not changes:
        return
    aws.write("apigateway", "create_deployment", restApiId=api_id, stageName=STAGE, description="sagehost gateway")
    if new:  # stages carry API Gateway's cost-allocation tags
        aws.write("apigateway", "tag_resource", resourceArn=where.stage_arn(api_id), tags=where.tags)
    changes.append(f"deployed stage {STAGE}")


def ensure_key(aws: Aws, where: Where, api_id: str, changes: list[str]) -> str:
    """An API key and a usage plan on this API's stage, the key in the plan; the key's id."""
    name = api_name(where.name)
    keys = _owned(where, _pages(aws, "get_api_keys", nameQuery=name), name)
    if keys:
        key_id = str(keys[0]["id"])
    else:
        key_id = str(aws.write("apigateway", "create_api_key", name=name, enabled=True, tags=where.tags)["id"])
        changes.append(f"created API key {name} ({key_id})")
    stage = {"apiId": api_id, "stage": STAGE}
    plans = _owned(where, _pages(aws, "get_usage_plans"), name)
    if not plans:
        plan_id = str(aws.write("apigateway", "create_usage_plan", name=name, apiStages=[stage], tags=where.tags)["id"])
        changes.append(f"created usage plan {name}")
    else:
        plan_id = str(plans[0]["id"])
        if stage not in [{"apiId": s.get("apiId"), "stage": s.get("stage")} for s in plans[0].get("apiStages", [])]:
            value = f"{api_id}:{STAGE}"
            operation = {"op": "add", "path": "/apiStages", "value": value}
            aws.write("apigateway", "update_usage_plan", usagePlanId=plan_id, patchOperations=[operation])
            changes.append(f"usage plan {name} covers {value}")
    members = _pages(aws, "get_usage_plan_keys", usagePlanId=plan_id)
    if not any(m.get("id") == key_id for m in members):
        aws.write("apigateway", "create_usage_plan_key", usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")
        changes.append(f"API key {key_id} is in usage plan {name}")
    return key_id


# ---- find and remove ---------------------------------------------------------------------------


@dataclass
class Pieces:
    """The front door's parts that exist for an endpoint name (only those tagged for it)."""

    plans: list[tuple[str, list[str]]] = field(default_factory=list)
    """(usage plan id, its "api:stage" entries)"""
    keys: list[str] = field(default_factory=list)
    apis: list[str] = field(default_factory=list)
    function: str | None = None
    log_group: str | None = None
    role: str | None = None
    role_policies: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        found = [f"API Gateway usage plan {plan}" for plan, _ in self.plans]
        found += [f"API Gateway API key {key}" for key in self.keys]
        found += [f"API Gateway REST API {api} (its stage, deployment and POST /{PATH})" for api in self.apis]
        found += [f"Lambda function {self.function}"] if self.function else []
        found += [f"log group {self.log_group}"] if self.log_group else []
        found += [f"IAM role {self.role} (and its inline policy)"] if self.role else []
        return found


def find(aws: Aws, name: str, *, strict: bool = True) -> Pieces:
    """The front door of `name`. Not strict (for `sagehost delete`), a kind the caller may not
    read is skipped: a user who never made a gateway needs no API Gateway, Lambda or IAM rights."""
    where = Where(name, f"arn:aws:sagemaker:{aws.region}:000000000000:endpoint/{name}")
    pieces = Pieces()
    for kind, look in (
        ("apigateway", _find_apis),
        ("lambda", _find_function),
        ("logs", _find_log_group),
        ("iam", _find_role),
    ):
        try:
            look(aws, where, pieces)
        except AwsPermissionDenied:
            if strict:
                raise
            log.info("%s refused; no %s parts of a sagehost gateway looked for", kind, kind)
    return pieces


def remove(aws: Aws, pieces: Pieces) -> None:
    """Delete the pieces, callers first: nothing points at what is already gone."""
    for plan, stages in pieces.plans:
        # API Gateway refuses to delete a usage plan that still covers a stage.
        operations = [{"op": "remove", "path": "/apiStages", "value": stage} for stage in stages]
        if operations:
            aws.write("apigateway", "update_usage_plan", usagePlanId=plan, patchOperations=operations)
        aws.write("apigateway", "delete_usage_plan", usagePlanId=plan)
    for key in pieces.keys:
        aws.write("apigateway", "delete_api_key", apiKey=key)
    for api in pieces.apis:
        aws.write("apigateway", "delete_rest_api", restApiId=api)
    if pieces.function:
        aws.write("lambda", "delete_function", FunctionName=pieces.function)
    if pieces.log_group:
        aws.write("logs", "delete_log_group", logGroupName=pieces.log_group)
    if pieces.role:
        for policy in pieces.role_policies:
            aws.write("iam", "delete_role_policy", RoleName=pieces.role, PolicyName=policy)
        aws.write("iam", "delete_role", RoleName=pieces.role)


def _find_apis(aws: Aws, where: Where, pieces: Pieces) -> None:
    name = api_name(where.name)
    pieces.apis = [str(api["id"]) for api in _owned(where, _pages(aws, "get_rest_apis"), name)]
    pieces.keys = [str(key["id"]) for key in _owned(where, _pages(aws, "get_api_keys", nameQuery=name), name)]
    pieces.plans = [
        (str(plan["id"]), [f"{s['apiId']}:{s['stage']}" for s in plan.get("apiStages", [])])
        for plan in _owned(where, _pages(aws, "get_usage_plans"), name)
    ]


def _find_function(aws: Aws, where: Where, pieces: Pieces) -> None:
    found = aws.find("lambda", "get_function", FunctionName=where.function)
    if found is None:
        return
    tags = found.get("Tags")
    if tags is None:
        tags = aws.read("lambda", "list_tags", Resource=found["Configuration"]["FunctionArn"]).get("Tags", {})
    if _is_owned(where, tags):
        pieces.function = where.function


def _find_log_group(aws: Aws, where: Where, pieces: Pieces) -> None:
    """Lambda makes /aws/lambda/FUNCTION (untagged) at the first call; the name is sagehost's own."""
    group = f"/aws/lambda/{where.function}"
    found = aws.read("logs", "describe_log_groups", logGroupNamePrefix=group).get("logGroups", [])
    if any(g.get("logGroupName") == group for g in found):
        pieces.log_group = group


def _find_role(aws: Aws, where: Where, pieces: Pieces) -> None:
    if aws.find("iam", "get_role", RoleName=where.function) is None:
        return
    tags = aws.read("iam", "list_role_tags", RoleName=where.function).get("Tags", [])
    if _is_owned(where, {t["Key"]: t["Value"] for t in tags}):
        pieces.role = where.function
        pieces.role_policies = list(aws.read("iam", "list_role_policies", RoleName=where.function)["PolicyNames"])


# ---- small parts -------------------------------------------------------------------------------


def _pages(aws: Aws, method: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of an API Gateway listing, following `position`."""
    items: list[dict[str, Any]] = []
    params["limit"] = 500
    while True:
        page = aws.read("apigateway", method, **params)
        items += page.get("items", [])
        position = page.get("position")
        if not position or position == params.get("position"):
            return items
        params["position"] = position


def _owned(where: Where, items: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [item for item in items if item.get("name") == name and _is_owned(where, item.get("tags") or {})]


def _is_owned(where: Where, tags: dict[str, str]) -> bool:
    return all(tags.get(key) == value for key, value in where.tags.items())


def _require_owned(where: Where, kind: str, name: str, tags: dict[str, str]) -> None:
    if not _is_owned(where, tags):
        raise AwsConflict(
            f"The {kind} {name} exists, but sagehost did not make it for {where.name} (it lacks the tag "
            f"sagehost:endpoint={where.name}), so sagehost leaves it alone. Remove or rename it, then run again."
        )


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _as_json(document: Any) -> Any:
    """IAM's policy document: boto3 decodes it to a dict; other clients hand the JSON text."""
    return json.loads(document) if isinstance(document, str) else document


# ---- the command -------------------------------------------------------------------------------


@click.argument("name")
@click.option("--api-key", is_flag=True, help="Require an API key (x-api-key), with a usage plan.")
@click.option("--delete", "delete_it", is_flag=True, help="Remove the gateway (API, key, plan, function, role).")
def gateway_command(name: str, *, api_key: bool, delete_it: bool, region: str | None, profile: str | None) -> None:
    """An HTTPS URL for endpoint NAME: API Gateway POST /predict -> Lambda -> InvokeEndpoint."""
    from sagehost.aws.session import Aws
    from sagehost.aws.spec import endpoint_name

    name = endpoint_name(name)
    aws = Aws.connect(region, profile, echo=click.echo)
    if delete_it:
        if api_key:
            click.echo("(--api-key is ignored with --delete.)")
        _delete(aws, name)
        return
    built = up(aws, name, api_key=api_key)
    for line in _report(aws, name, built):
        click.echo(line)


def _delete(aws: Aws, name: str) -> None:
    pieces = find(aws, name)
    lines = pieces.lines()
    if not lines:
        click.echo(f"No sagehost gateway for {name} in {aws.region}.")
        return
    remove(aws, pieces)
    click.echo(f"Removed the gateway of {name}:\n" + "\n".join(f"  {line}" for line in lines))


def _report(aws: Aws, name: str, built: Built) -> Iterator[str]:
    where = Where(name, f"arn:aws:sagemaker:{aws.region}::endpoint/{name}")
    if built.changes:
        yield f"Gateway for endpoint {name} in {aws.region}:"
        yield from (f"  {change}" for change in built.changes)
    else:
        yield f"Gateway for endpoint {name} is up to date."
    url = where.url(built.api_id)
    yield f"POST {url}"
    call = f"curl -X POST -H 'Content-Type: text/csv' --data-binary @rows.csv {url}"
    if built.key_id is None:
        yield f"Try it: {call}"
        yield "Anyone with this URL can call the endpoint (and you pay for it): add --api-key to require a key."
        return
    # The key's value is a credential: it is fetched by the user's own AWS CLI, never printed here.
    fetch = (
        f"aws apigateway get-api-key --api-key {built.key_id} --include-value --query value --output text "
        f"--region {aws.region}"
    )
    yield f"Try it: curl -X POST -H \"x-api-key: $({fetch})\" -H 'Content-Type: text/csv' --data-binary @rows.csv {url}"
