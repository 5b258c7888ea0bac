"""The steps of a build, each a function over its :class:`BuildContext`.

``checkout → template → agent → commit → push → ci``; every step's start and end is a
``status`` event in the task's stream (``BuildEvents.step``). Between steps the supervisor
is asked whether the run goes on (a cancel, a lost lease); right before the commit and the
push the lease is proved, and a push is stopped if the lease is lost meanwhile: an attempt
that lost its lease never publishes anything. What a step produces goes into
``ctx.artifacts``, kept when a later step fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

from forgeline.domain.agent import AgentRequest, AgentResult, ErrorData, RunStatus
from forgeline.domain.errors import CredentialNotFoundError, ForgelineError
from forgeline.domain.git import GitRemote, build_commit_message, review_branch
from forgeline.domain.project import Project
from forgeline.domain.secrets import Secret
from forgeline.domain.task import TaskStatus
from forgeline.ports.agent import CodeAgent
from forgeline.ports.ci import CIProvider, PipelineStatus
from forgeline.ports.git import Checkout
from forgeline.services.build_run import BuildCancelledError, BuildContext, Outcome
from forgeline.services.credentials import reveal_env


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a build runs with: its project, agent, environment and remote."""

    project: Project
    agent: CodeAgent
    env: dict[str, Secret]
    remote: GitRemote


async def pipeline(ctx: BuildContext) -> Outcome:
    """Run the build's steps; the outcome (raises to say cancelled, lease lost, or an
    error for the failure policy)."""
    spec = ctx.request.spec
    prepared = await prepare(ctx)
    checkout = await checkout_step(ctx, prepared)
    target = prepared.project.default_branch if spec.auto_deploy else review_branch(ctx.task_id)
    earlier = (
        None if checkout.empty else await ctx.parts.git.find_task_commit(ctx.workdir, ctx.task_id)
    )
    if earlier is not None:
        # An earlier attempt of this task pushed already (its worker died after the push):
        # do not run the agent twice, report that commit.
        await ctx.events.status("already_pushed", commit_sha=earlier)
        ctx.artifacts = replace(ctx.artifacts, commit_sha=earlier)
        return await after_push(ctx, prepared, Outcome(TaskStatus.COMPLETED, ""), earlier, target)

    if checkout.empty:
        await template_step(ctx, prepared)

    result = await agent_step(ctx, prepared)
    ctx.guard.check()  # a cancel or a lost lease stopped the agent
    if result.status is RunStatus.CANCELLED:
        raise BuildCancelledError
    if result.status is not RunStatus.SUCCEEDED:
        return Outcome(TaskStatus.FAILED, result.text, agent=result, error=result.text)

    outcome = Outcome(TaskStatus.COMPLETED, result.text, agent=result)
    if not await commit_step(ctx):
        return outcome
    sha = await push_step(ctx, prepared, target)
    return await after_push(ctx, prepared, outcome, sha, target)


async def prepare(ctx: BuildContext) -> Prepared:
    """The project, its agent (``ctx.provider`` from now on), the build's environment and
    the remote (with the push token of an HTTP remote, when there is one)."""
    spec = ctx.request.spec
    parts = ctx.parts
    project = await parts.store.get_project(ctx.request.project)
    agent = parts.registry.get(project.agent_choice(spec.provider, spec.model)[0])
    ctx.provider = agent.name
    env: dict[str, Secret] = {}
    token: Secret | None = None
    if parts.injector is not None:
        env = await parts.injector.for_build(project, ctx.task_id)
        if project.repo_url.startswith(("https://", "http://")):
            with contextlib.suppress(CredentialNotFoundError):
                token = await parts.injector.secret(
                    parts.settings.git_token_credential, project=project.name, task_id=ctx.task_id
                )
    return Prepared(project, agent, env, GitRemote(project.repo_url, token=token))


async def checkout_step(ctx: BuildContext, prepared: Prepared) -> Checkout:
    """This attempt's own checkout of the project's branch."""
    async with ctx.events.step("checkout") as info:
        checkout = await ctx.parts.git.prepare_checkout(
            prepared.project.name, prepared.remote, prepared.project.default_branch, ctx.workdir
        )
        info["head"] = checkout.head
    ctx.guard.check()
    return checkout


def _template(ctx: BuildContext, project: Project) -> str | None:
    return ctx.request.spec.template or project.template


async def template_step(ctx: BuildContext, prepared: Prepared) -> None:
    """Render the project's template into an empty checkout (its first build)."""
    template = _template(ctx, prepared.project)
    provider = ctx.parts.templates
    if not template or provider is None:
        return
    project = prepared.project
    async with ctx.events.step("template") as info:
        info["template"] = template
        variables = {**project.variables, **ctx.request.spec.variables}
        await asyncio.to_thread(
            provider.render, template, variables, Path(ctx.workdir), project_name=project.name
        )
    ctx.guard.check()


async def _session_to_resume(ctx: BuildContext, prepared: Prepared) -> str | None:
    """The session the agent resumes: the one the spec names, or with ``continue`` the
    project's last of this provider (none yet: a new session, and the events say so)."""
    spec = ctx.request.spec
    if not spec.continue_session:
        return spec.resume_session
    name = prepared.agent.name
    session = await ctx.parts.store.last_session(prepared.project.name, name)
    if session is None:
        await ctx.events.status(
            "new_session", reason=f"no completed {name} build of this project yet"
        )
    else:
        await ctx.events.status("continuing", session_id=session)
    return session


async def agent_step(ctx: BuildContext, prepared: Prepared) -> AgentResult:
    """Run the agent in the checkout; its events go to the stream as they come, its
    ``result`` is returned (never with an empty text when it failed)."""
    spec = ctx.request.spec
    project, agent = prepared.project, prepared.agent
    prompt = spec.prompt
    template = _template(ctx, project)
    if template and ctx.parts.templates is not None:
        with contextlib.suppress(ForgelineError):
            described = ctx.parts.templates.get_template(template)
            context = described.prompt_context({**project.variables, **spec.variables})
            prompt = f"{context}\n\n{prompt}"
    request = AgentRequest(
        prompt=prompt,
        workdir=ctx.workdir,
        provider=agent.name,
        model=project.agent_choice(spec.provider, spec.model)[1],
        timeout_s=spec.timeout_s,
        resume_session=await _session_to_resume(ctx, prepared),
        env=reveal_env(prepared.env),
        task_id=ctx.task_id,
        state_key=project.name,
    )
    ctx.guard.agent_run = (agent.name, request.run_id)
    if ctx.guard.cancel_requested.is_set():
        await agent.cancel(request.run_id)
    result: AgentResult | None = None
    reported = ""  # the last error the agent reported, should its result say nothing
    async with ctx.events.step("agent") as info:
        info["provider"] = agent.name
        stream = agent.execute(request)
        try:
            async for event in stream:
                if isinstance(event.data, AgentResult):
                    result = event.data
                    continue
                if isinstance(event.data, ErrorData):
                    reported = event.data.message
                await ctx.events.emit(event)
        finally:
            await stream.aclose()
        if result is None:  # pragma: no cover - the CodeAgent port guarantees a result
            result = AgentResult(status=RunStatus.FAILED, text="the agent ended without a result")
        if result.status in (RunStatus.FAILED, RunStatus.TIMED_OUT) and not result.text.strip():
            # The task's last_error is this text: never leave it empty.
            said = f"{agent.name} run ended {result.status.value} without saying why"
            result = replace(result, text=reported or said)
        info["status"] = result.status.value
        if result.status is not RunStatus.SUCCEEDED:
            info["outcome"] = "cancelled" if result.status is RunStatus.CANCELLED else "failed"
    return result


async def commit_step(ctx: BuildContext) -> bool:
    """Commit the agent's work as one commit with the task's trailer; False when it
    changed no file (nothing to push)."""
    await ctx.guard.prove_lease()
    settings = ctx.parts.settings
    async with ctx.events.step("commit") as info:
        if not await ctx.parts.git.has_changes(ctx.workdir):
            info["outcome"] = "skipped"
            info["reason"] = "no file changed"
            return False
        sha = await ctx.parts.git.commit(
            ctx.workdir,
            build_commit_message(ctx.request.spec.prompt),
            settings.author,
            {"Forgeline-Task": ctx.task_id},
        )
        info["commit_sha"] = sha
    ctx.guard.check()
    return True


async def push_step(ctx: BuildContext, prepared: Prepared, target: str) -> str:
    """Push the commit to ``target`` while the lease holds; the pushed sha."""
    await ctx.guard.prove_lease()
    force = not ctx.request.spec.auto_deploy
    async with ctx.events.step("push") as info:
        # A review branch belongs to this task alone: a retried attempt replaces it.
        pushed = await ctx.guard.unless_lease_lost(
            ctx.parts.git.push(ctx.workdir, prepared.remote, target, force=force)
        )
        info.update(branch=target, commit_sha=pushed.sha)
    ctx.artifacts = replace(ctx.artifacts, commit_sha=pushed.sha)
    return pushed.sha


async def after_push(
    ctx: BuildContext, prepared: Prepared, outcome: Outcome, sha: str, target: str
) -> Outcome:
    """A review branch ends the build; a deploy goes on to CI when the project has it."""
    if not ctx.request.spec.auto_deploy:
        ctx.artifacts = replace(ctx.artifacts, branch=target)
        return outcome
    settings = prepared.project.settings
    deploy_url = settings.get("deploy_url")
    if deploy_url:
        ctx.artifacts = replace(ctx.artifacts, deploy_url=deploy_url)
    repo_id = settings.get("woodpecker_repo_id")
    ci = ctx.parts.ci
    if ci is None or repo_id is None:
        await ctx.events.status(
            "step",
            step="ci",
            phase="skipped",
            reason="no CI configured" if ci is None else "project not activated in CI",
        )
        return outcome
    return await ci_step(ctx, outcome, ci=ci, repo_id=int(repo_id), sha=sha, branch=target)


async def ci_step(
    ctx: BuildContext, outcome: Outcome, *, ci: CIProvider, repo_id: int, sha: str, branch: str
) -> Outcome:
    """Follow the commit's pipeline to its end; a pipeline that did not succeed fails the
    build. The task's cancel cancels the pipeline too; a lost lease does not (the task goes
    on under another worker, which follows the same pipeline)."""
    async with ctx.events.step("ci") as info:
        settings = ctx.parts.settings
        pipeline = await ci.find_pipeline(repo_id, sha, settings.ci_find_timeout_s, branch=branch)
        if pipeline is None:
            pipeline = await ci.trigger(repo_id, branch, {"TASK_ID": ctx.task_id})
        if pipeline is None:
            info["outcome"] = "skipped"
            info["reason"] = "CI started no pipeline for this commit"
            return outcome
        info["pipeline"] = pipeline.number
        ctx.artifacts = replace(ctx.artifacts, pipeline=pipeline.number)
        try:
            final = await _follow(ctx, ci, repo_id, pipeline)
        except BuildCancelledError:
            await ci.cancel(repo_id, pipeline.number)
            raise
        ctx.artifacts = replace(ctx.artifacts, pipeline_status=final.status)
        info["pipeline_status"] = final.status
        if final.status != "success":
            step = f" at step {final.failed_step!r}" if final.failed_step else ""
            message = f"CI pipeline {final.number} ended {final.status}{step}"
            info["outcome"] = "failed"
            output = message if not outcome.output else f"{outcome.output}\n\n{message}"
            return replace(outcome, status=TaskStatus.FAILED, error=message, output=output)
    return outcome


async def _follow(
    ctx: BuildContext, ci: CIProvider, repo_id: int, pipeline: PipelineStatus
) -> PipelineStatus:
    async def on_change(status: PipelineStatus) -> None:
        await ctx.events.status("pipeline", pipeline=status.number, pipeline_status=status.status)

    timeout_s = ctx.parts.settings.ci_pipeline_timeout_s
    follow = asyncio.ensure_future(
        ci.follow(repo_id, pipeline.number, timeout_s, on_change=on_change)
    )
    stopped = asyncio.ensure_future(ctx.guard.stop.wait())
    try:
        await asyncio.wait({follow, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if follow.done():
            return follow.result()
    finally:
        for waiter in (follow, stopped):
            waiter.cancel()
        await asyncio.gather(follow, stopped, return_exceptions=True)
    ctx.guard.check()  # a lost lease ends the run here, silently
    raise BuildCancelledError  # pragma: no cover - stop is only set with one of them
