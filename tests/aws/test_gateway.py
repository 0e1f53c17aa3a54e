"""`sagehost gateway` against moto (the wiring), and its Lambda handler in process against a real
endpoint stand-in: `sagehost local serve` on a loopback port, reached by boto3's runtime client
through AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME (moto's API Gateway data plane and Lambda invoke,
which needs Docker, are not used)."""

from __future__ import annotations

import ast
import base64
import io
import json
import logging
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sagehost.aws import lambda_handler
from sagehost.aws.gateway import handler_zip, resource_name
from tests.aws.conftest import ACCESS_KEY_ID, ACCOUNT, IMAGE, REGION, ROLE_ARN, SECRET, TOKEN, Cloud
from tests.conftest import SAGEHOST, free_port, local_endpoint

ROWS = "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
TAG = {"sagehost:endpoint": "iris"}


def an_endpoint(cloud: Cloud, name: str, tags: dict[str, str] | None = None) -> str:
    """An endpoint in moto (tagged as sagehost's by default); its ARN."""
    sm = cloud.client("sagemaker")
    tag_list = [{"Key": k, "Value": v} for k, v in (tags if tags is not None else {"sagehost:endpoint": name}).items()]
    sm.create_model(ModelName=f"{name}-m", ExecutionRoleArn=ROLE_ARN, PrimaryContainer={"Image": IMAGE}, Tags=tag_list)
    variant = {"VariantName": "AllTraffic", "ModelName": f"{name}-m", "InstanceType": "ml.m5.large"}
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-c", ProductionVariants=[{**variant, "InitialInstanceCount": 1}], Tags=tag_list
    )
    return str(sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-c", Tags=tag_list)["EndpointArn"])


def rest_apis(cloud: Cloud) -> list[dict[str, Any]]:
    return list(cloud.client("apigateway").get_rest_apis()["items"])


def predict_method(cloud: Cloud, api_id: str) -> dict[str, Any]:
    apigateway = cloud.client("apigateway")
    resource = next(r for r in apigateway.get_resources(restApiId=api_id)["items"] if r["path"] == "/predict")
    method: dict[str, Any] = apigateway.get_method(restApiId=api_id, resourceId=resource["id"], httpMethod="POST")
    return method


def tagged_leftovers(cloud: Cloud, name: str) -> list[str]:
    """Every gateway piece still tagged sagehost:endpoint=NAME."""
    tag = {"sagehost:endpoint": name}
    apigateway, iam, lam = cloud.client("apigateway"), cloud.client("iam"), cloud.client("lambda")
    found = [f"api {a['id']}" for a in apigateway.get_rest_apis()["items"] if a.get("tags") == tag]
    found += [f"key {k['id']}" for k in apigateway.get_api_keys()["items"] if k.get("tags") == tag]
    found += [f"plan {p['id']}" for p in apigateway.get_usage_plans()["items"] if p.get("tags") == tag]
    for function in lam.list_functions()["Functions"]:
        if lam.list_tags(Resource=function["FunctionArn"])["Tags"] == tag:
            found.append(f"function {function['FunctionName']}")
    for role in iam.list_roles()["Roles"]:
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role["RoleName"])["Tags"]}
        if tags == tag:
            found.append(f"role {role['RoleName']}")
    return found


# ---- the wiring, against moto ------------------------------------------------------------------


def test_gateway_wires_post_predict_to_a_function_that_may_invoke_only_this_endpoint(cloud: Cloud) -> None:
    endpoint_arn = an_endpoint(cloud, "iris")

    result = cloud.run("gateway", "iris")

    assert result.exit_code == 0, result.output
    [api] = rest_apis(cloud)
    assert (api["name"], api["tags"]) == ("sagehost-iris", TAG)
    function = cloud.client("lambda").get_function(FunctionName="sagehost-gateway-iris")
    config = function["Configuration"]
    assert function["Tags"] == TAG
    assert (config["Runtime"], config["Handler"]) == ("python3.12", "lambda_handler.handler")
    assert config["Environment"]["Variables"] == {"SAGEHOST_ENDPOINT": "iris"}
    method = predict_method(cloud, api["id"])
    assert method["authorizationType"] == "NONE" and not method["apiKeyRequired"]
    integration = method["methodIntegration"]
    assert (integration["type"], integration["httpMethod"]) == ("AWS_PROXY", "POST")
    assert integration["uri"] == (
        f"arn:aws:apigateway:{REGION}:lambda:path/2015-03-31/functions/{config['FunctionArn']}/invocations"
    )
    [permission] = json.loads(cloud.client("lambda").get_policy(FunctionName="sagehost-gateway-iris")["Policy"])[
        "Statement"
    ]
    assert permission["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert permission["Action"] == "lambda:InvokeFunction"
    source = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{api['id']}/*/POST/predict"
    assert permission["Condition"]["ArnLike"]["AWS:SourceArn"] == source
    stage = cloud.client("apigateway").get_stage(restApiId=api["id"], stageName="prod")
    assert stage["deploymentId"]
    iam = cloud.client("iam")
    role = iam.get_role(RoleName="sagehost-gateway-iris")["Role"]
    assert config["Role"] == role["Arn"]
    assert "lambda.amazonaws.com" in json.dumps(role["AssumeRolePolicyDocument"])
    assert {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role["RoleName"])["Tags"]} == TAG
    [policy_name] = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=policy_name)["PolicyDocument"]
    invoking = [s for s in policy["Statement"] if "sagemaker" in json.dumps(s["Action"])]
    assert invoking == [
        {"Sid": "InvokeOneEndpoint", "Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": endpoint_arn}
    ]
    others = [s for s in policy["Statement"] if s not in invoking]
    assert all(str(a).startswith("logs:") for s in others for a in s["Action"])
    assert all("/aws/lambda/sagehost-gateway-iris" in r for s in others for r in s["Resource"])
    url = f"https://{api['id']}.execute-api.{REGION}.amazonaws.com/prod/predict"
    assert f"POST {url}" in result.output
    assert f"curl -X POST -H 'Content-Type: text/csv' --data-binary @rows.csv {url}" in result.output
    assert "add --api-key" in result.output
    assert cloud.client("apigateway").get_api_keys()["items"] == []


def test_api_key_and_usage_plan_when_asked_and_the_key_is_never_printed(cloud: Cloud) -> None:
    an_endpoint(cloud, "iris")

    result = cloud.run("gateway", "iris", "--api-key")

    assert result.exit_code == 0, result.output
    apigateway = cloud.client("apigateway")
    [api] = rest_apis(cloud)
    assert predict_method(cloud, api["id"])["apiKeyRequired"] is True
    [key] = apigateway.get_api_keys(includeValues=True)["items"]
    assert (key["name"], key["tags"], key["enabled"]) == ("sagehost-iris", TAG, True)
    [plan] = apigateway.get_usage_plans()["items"]
    assert (plan["name"], plan["tags"]) == ("sagehost-iris", TAG)
    assert plan["apiStages"] == [{"apiId": api["id"], "stage": "prod"}]
    assert [k["id"] for k in apigateway.get_usage_plan_keys(usagePlanId=plan["id"])["items"]] == [key["id"]]
    assert key["value"] not in result.output
    assert f"aws apigateway get-api-key --api-key {key['id']} --include-value" in result.output
    assert 'curl -X POST -H "x-api-key: $(aws apigateway get-api-key' in result.output


def test_running_it_again_is_up_to_date_and_a_key_can_be_added_later(cloud: Cloud) -> None:
    an_endpoint(cloud, "iris")
    assert cloud.run("gateway", "iris").exit_code == 0
    [api] = rest_apis(cloud)
    apigateway = cloud.client("apigateway")
    deployments = apigateway.get_deployments(restApiId=api["id"])["items"]

    again = cloud.run("gateway", "iris")

    assert again.exit_code == 0, again.output
    assert "Gateway for endpoint iris is up to date." in again.output
    assert [a["id"] for a in rest_apis(cloud)] == [api["id"]]
    assert apigateway.get_deployments(restApiId=api["id"])["items"] == deployments

    keyed = cloud.run("gateway", "iris", "--api-key")
    assert keyed.exit_code == 0, keyed.output
    assert "(API key required)" in keyed.output and "deployed stage prod" in keyed.output
    assert predict_method(cloud, api["id"])["apiKeyRequired"] is True
    assert len(apigateway.get_deployments(restApiId=api["id"])["items"]) == len(deployments) + 1

    without = cloud.run("gateway", "iris")  # a key once required stays required
    assert without.exit_code == 0 and "up to date" in without.output and "x-api-key" in without.output
    assert predict_method(cloud, api["id"])["apiKeyRequired"] is True


def test_a_function_running_other_code_gets_the_handler_again(cloud: Cloud) -> None:
    an_endpoint(cloud, "iris")
    assert cloud.run("gateway", "iris").exit_code == 0
    lam = cloud.client("lambda")
    shipped = lam.get_function(FunctionName="sagehost-gateway-iris")["Configuration"]["CodeSha256"]
    old = io.BytesIO()
    with zipfile.ZipFile(old, "w") as archive:
        archive.writestr("lambda_handler.py", "def handler(event, context):\n    return {}\n")
    lam.update_function_code(FunctionName="sagehost-gateway-iris", ZipFile=old.getvalue())

    result = cloud.run("gateway", "iris")

    assert result.exit_code == 0, result.output
    assert "updated the code of Lambda function sagehost-gateway-iris" in result.output
    assert lam.get_function(FunctionName="sagehost-gateway-iris")["Configuration"]["CodeSha256"] == shipped
    assert "up to date" in cloud.run("gateway", "iris").output


def test_the_zip_holds_the_handler_alone_importing_only_the_standard_library_and_boto3() -> None:
    with zipfile.ZipFile(io.BytesIO(handler_zip())) as archive:
        assert archive.namelist() == ["lambda_handler.py"]
        source = archive.read("lambda_handler.py")
    assert source == Path(lambda_handler.__file__).read_bytes()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names == {"boto3", "botocore"}
    assert handler_zip() == handler_zip()  # the same bytes each time: its hash tells a change


def test_delete_removes_every_piece_and_leaves_another_endpoints_gateway(cloud: Cloud) -> None:
    an_endpoint(cloud, "iris")
    an_endpoint(cloud, "iris2")
    assert cloud.run("gateway", "iris", "--api-key").exit_code == 0
    assert cloud.run("gateway", "iris2", "--api-key").exit_code == 0
    cloud.client("logs").create_log_group(logGroupName="/aws/lambda/sagehost-gateway-iris")  # Lambda's own
    before_iris2 = tagged_leftovers(cloud, "iris2")

    result = cloud.run("gateway", "iris", "--delete")

    assert result.exit_code == 0, result.output
    assert "Removed the gateway of iris" in result.output
    assert "log group /aws/lambda/sagehost-gateway-iris" in result.output
    assert tagged_leftovers(cloud, "iris") == []
    assert cloud.client("logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"] == []
    assert tagged_leftovers(cloud, "iris2") == before_iris2 and len(before_iris2) == 5
    assert cloud.endpoint("iris")["EndpointStatus"] == "InService"  # the endpoint is not the gateway's
    again = cloud.run("gateway", "iris", "--delete")
    assert again.exit_code == 0 and "No sagehost gateway for iris" in again.output


def test_sagehost_delete_also_removes_the_gateway(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0
    assert cloud.run("gateway", "iris", "--api-key").exit_code == 0
    assert len(tagged_leftovers(cloud, "iris")) == 5

    listed = cloud.run("delete", "iris", "--dry-run")
    assert "Lambda function sagehost-gateway-iris" in listed.output
    assert "would call apigateway DeleteRestApi" in listed.output
    result = cloud.run("delete", "iris", "--yes")

    assert result.exit_code == 0, result.output
    assert tagged_leftovers(cloud, "iris") == []
    assert cloud.client("sagemaker").list_endpoints()["Endpoints"] == []


def test_delete_without_gateway_rights_still_deletes_the_endpoint(
    cloud: Cloud, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user who never made a gateway needs no API Gateway, Lambda or IAM permissions to delete."""
    from moto.apigateway.responses import APIGatewayResponse
    from moto.core.exceptions import JsonRESTError

    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0

    def refused(self: object, *args: object, **kwargs: object) -> object:
        raise JsonRESTError("AccessDeniedException", "not authorized to perform: apigateway:GET")

    monkeypatch.setattr(APIGatewayResponse, "get_rest_apis", refused)
    result = cloud.run("delete", "iris", "--yes")

    assert result.exit_code == 0, result.output
    assert cloud.client("sagemaker").list_endpoints()["Endpoints"] == []
    denied = cloud.run("gateway", "iris", "--delete")  # asked for by name: the refusal is shown
    assert denied.exit_code == 1 and "Permission denied: apigateway:" in denied.output


def test_the_endpoint_must_exist_and_what_sagehost_did_not_make_is_left_alone(cloud: Cloud) -> None:
    missing = cloud.run("gateway", "iris")
    assert missing.exit_code == 1 and "There is no endpoint iris" in missing.output
    assert "sagehost deploy iris" in missing.output

    an_endpoint(cloud, "iris")
    trust = json.dumps({"Version": "2012-10-17", "Statement": []})
    cloud.client("iam").create_role(RoleName="sagehost-gateway-iris", AssumeRolePolicyDocument=trust)
    taken = cloud.run("gateway", "iris")
    assert taken.exit_code == 1 and "The IAM role sagehost-gateway-iris exists, but sagehost did not make it" in (
        taken.output
    )
    assert rest_apis(cloud) == [] and cloud.client("lambda").list_functions()["Functions"] == []
    assert cloud.run("gateway", "iris", "--delete").exit_code == 0
    cloud.client("iam").get_role(RoleName="sagehost-gateway-iris")  # still there


def test_long_names_keep_within_64_characters_and_apart() -> None:
    long_a, long_b = "a" * 60 + "-one", "a" * 60 + "-two"
    assert resource_name("iris") == "sagehost-gateway-iris"
    assert len(resource_name(long_a)) == 64 and resource_name(long_a) != resource_name(long_b)


def test_no_credential_or_api_key_shows_in_gateway_output_or_log(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    an_endpoint(cloud, "iris")
    cloud.run("gateway", "iris", "--api-key")
    cloud.run("gateway", "iris")
    cloud.run("gateway", "iris", "--delete")
    cloud.run("gateway", "nothing")

    everything = "\n".join([*cloud.outputs, caplog.text])
    assert "x-api-key" in everything
    for secret in (SECRET, TOKEN, ACCESS_KEY_ID):
        assert secret not in everything


# ---- the handler, in process, against a real endpoint stand-in --------------------------------


@pytest.fixture(scope="module")
def stand_in(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`sagehost local serve --no-container` with the packaged demo model: the runtime API on loopback."""
    tmp = tmp_path_factory.mktemp("stand-in")
    archive = tmp / "model.tar.gz"
    package = [SAGEHOST, "package", str(iris_dir), "-o", str(archive)]
    subprocess.run(package, check=True, capture_output=True, timeout=120)
    with local_endpoint(["--no-container", "--model-data", str(archive)], tmp) as endpoint:
        yield endpoint.url


@pytest.fixture
def runtime(stand_in: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The handler's environment as Lambda gives it, its runtime client pointed at the stand-in."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", stand_in)
    monkeypatch.setenv(lambda_handler.ENDPOINT_VARIABLE, "iris")
    lambda_handler._runtime.cache_clear()
    yield
    lambda_handler._runtime.cache_clear()


def proxy_event(body: bytes, headers: dict[str, str], *, base64_encoded: bool = True) -> dict[str, Any]:
    """An API Gateway REST proxy event for POST /predict (binaryMediaTypes */*: bodies come base64)."""
    return {
        "resource": "/predict",
        "path": "/predict",
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {"resourcePath": "/predict", "httpMethod": "POST", "stage": "prod"},
        "body": base64.b64encode(body).decode() if base64_encoded else body.decode(),
        "isBase64Encoded": base64_encoded,
    }


def expected(model: Any, frame: pd.DataFrame) -> list[str]:
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    return [str(v) for v in model.predict(pd.DataFrame(rows, columns=frame.columns))]


def test_handler_csv_in_and_out(runtime: None, iris_model: Any, iris_frame: pd.DataFrame) -> None:
    event = proxy_event(ROWS.encode(), {"Content-Type": "text/csv", "Accept": "text/csv"}, base64_encoded=False)

    answer = lambda_handler.handler(event, None)

    assert answer["statusCode"] == 200, answer
    assert answer["headers"]["Content-Type"].startswith("text/csv")
    assert answer["isBase64Encoded"] is False
    assert answer["body"].splitlines() == expected(iris_model, iris_frame)
    assert answer["headers"]["X-Amzn-Invoked-Production-Variant"] == "AllTraffic"


def test_handler_json_as_api_gateway_sends_it(runtime: None, iris_model: Any, iris_frame: pd.DataFrame) -> None:
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode()
    event = proxy_event(body, {"content-type": "application/json", "accept": "application/json"})

    answer = lambda_handler.handler(event, None)

    assert answer["statusCode"] == 200, answer
    assert answer["headers"]["Content-Type"].startswith("application/json")
    assert answer["isBase64Encoded"] is False
    assert json.loads(answer["body"]) == {"predictions": expected(iris_model, iris_frame)}  # TF Serving's shape


def test_handler_binary_npy_both_ways(runtime: None, iris_model: Any, iris_frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    event = proxy_event(buffer.getvalue(), {"Content-Type": "application/x-npy", "Accept": "application/x-npy"})

    answer = lambda_handler.handler(event, None)

    assert answer["statusCode"] == 200, answer
    assert answer["headers"]["Content-Type"] == "application/x-npy"
    assert answer["isBase64Encoded"] is True  # API Gateway turns it back into bytes
    values = np.load(io.BytesIO(base64.b64decode(answer["body"])), allow_pickle=False)
    assert [str(v) for v in values] == expected(iris_model, iris_frame)


def test_handler_a_model_error_keeps_the_containers_status_and_body(runtime: None) -> None:
    event = proxy_event(b"1,2\n", {"Content-Type": "text/csv"})

    answer = lambda_handler.handler(event, None)

    assert answer["statusCode"] == 400, answer
    assert answer["headers"]["Content-Type"] == "application/json"
    error = json.loads(answer["body"])
    assert error["error"]["code"] == "schema_mismatch"
    assert "Received client error" not in answer["body"]  # the container's words, not the runtime's wrapper


def test_handler_answers_for_what_is_not_the_models(runtime: None, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = lambda_handler.handler({**proxy_event(b"", {}), "body": "not base64!"}, None)
    assert bad["statusCode"] == 400 and json.loads(bad["body"])["error"]["code"] == "bad_body"

    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    lambda_handler._runtime.cache_clear()
    unreachable = lambda_handler.handler(proxy_event(ROWS.encode(), {"Content-Type": "text/csv"}), None)
    assert unreachable["statusCode"] == 502
    assert json.loads(unreachable["body"]) == {
        "error": {"code": "endpoint_unreachable", "message": "The model endpoint could not be reached; retry shortly."}
    }
